"""The SAM3 image model in MLX, one module per part; ``sam3.py`` assembles them."""
