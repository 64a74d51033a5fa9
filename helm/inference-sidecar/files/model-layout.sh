#!/bin/sh
# Lays out the model repository the server reads, $REPOSITORY (an emptyDir).
# 1. With $SOURCE (a volume mounted inside $REPOSITORY, so that links stay
#    inside the repository, as the server requires): link every entry of each
#    model directory there into $REPOSITORY/<model>/.
# 2. Copy each model's config.yaml rendered by the chart ($CONFIGS/<model>.yaml)
#    to $REPOSITORY/<model>/config.yaml, replacing the one the model had.
# Running it again gives the same result.
set -eu
: "${REPOSITORY:?}" "${CONFIGS:?}"
if [ -n "${SOURCE:-}" ]; then
  for model in "$SOURCE"/*/; do
    [ -d "$model" ] || continue
    name=$(basename "$model")
    mkdir -p "$REPOSITORY/$name"
    for entry in "$model"*; do
      [ -e "$entry" ] || continue
      ln -sfn "$entry" "$REPOSITORY/$name/$(basename "$entry")"
    done
  done
fi
for config in "$CONFIGS"/*.yaml; do
  [ -e "$config" ] || continue
  name=$(basename "$config" .yaml)
  mkdir -p "$REPOSITORY/$name"
  rm -f "$REPOSITORY/$name/config.yaml"
  cp "$config" "$REPOSITORY/$name/config.yaml"
done
echo "model repository $REPOSITORY:" && ls -l "$REPOSITORY"
