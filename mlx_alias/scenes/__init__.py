"""The scene world: pictures of objects named by words (``world``), the words and the
benchmark's concepts (``concepts``), COCO datasets from its ground truth (``dataset``), and
the tiny SAM3 trained on it that ships with the package (``weights``)."""
