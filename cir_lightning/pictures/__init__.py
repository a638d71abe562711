"""Pictures of what a model retrieves, drawn with Pillow.

``retrieval_picture`` draws one row per query: the reference image, the modification text (wrapped), the
top-5 gallery images with their scores, the true targets outlined in green, and the rank of the first
target when it is not among them (``missing_tile`` stands in for an image whose file is gone); ``recall_curves``
draws Recall@K against K, one curve per subset.
``query_rows`` builds the rows from a query dataset and its gallery (``cir_lightning.data``'s ``QueryDataset`` and
``GalleryDataset``, whose ``records`` hold image paths) and the ranked gallery rows; ``subset_pictures`` does it for
each (queries, gallery) pair of an evaluation. ``save_picture`` writes a PNG atomically under a free name, with what drew it in its text
(``picture_info``: the label, subset, model identity, version; ``PIL.Image.open(path).text`` reads it); ``log_picture``
sends it to the loggers that take images (TensorBoard's ``add_image``; CSV takes none).
"""

from cir_lightning.pictures.draw import (
    missing_tile,
    recall_curves,
    recall_points,
    retrieval_picture,
    stack,
    tile_origin,
)
from cir_lightning.pictures.outputs import (
    log_picture,
    picture_info,
    picture_name,
    picture_title,
    save_picture,
    subset_pictures,
)
from cir_lightning.pictures.rows import Hit, QueryRow, query_rows, sample_queries

__all__ = ["Hit", "QueryRow", "log_picture", "missing_tile", "picture_info", "picture_name", "picture_title",
           "query_rows", "recall_curves", "recall_points", "retrieval_picture", "sample_queries", "save_picture", "stack",
           "subset_pictures", "tile_origin"]
