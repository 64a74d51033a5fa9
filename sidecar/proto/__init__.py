"""Wire contract: the .proto files and the Python code generated from them."""
