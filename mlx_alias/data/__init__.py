"""The search's data: COCO datasets (``coco``) and their train/holdout splits (``split``)."""
