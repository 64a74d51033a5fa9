"""Bundled example model repository (``models/``) and the script that made it."""

from pathlib import Path

MODEL_REPOSITORY = Path(__file__).resolve().parent / "models"
