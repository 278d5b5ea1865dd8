"""COCO reading, the stage graph, derived targets, Ray and in-process execution, and the ``pipeline`` CLI."""
