"""Storage and formats: files on any file system, images, weights, COCO, Parquet outputs, and
the output folder's layout."""
