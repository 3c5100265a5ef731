"""A model that keeps learning where it is used: adapt a bundle to a new site from a few
labelled photos (``site``) or from unlabelled ones, its norm statistics only (``norms``)."""
