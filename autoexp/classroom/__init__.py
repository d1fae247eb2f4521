"""Code shared by the classroom scripts in scripts/: one-epoch training from checkpoint files,
plots of filters, exact PCA, k-means and numerical checks of their identities.

The scripts compose conf/ with Hydra's compose API and build data, models and trainers as
`autoexp-train` does, so a course exercise and a research run share one code path.
"""
