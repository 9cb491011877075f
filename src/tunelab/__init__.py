"""tunelab: fine-tune pretrained transformers under different training objectives (Lightning + Hydra)."""

from tunelab import resolvers as _resolvers  # noqa: F401  (registers ${minilm_path:} etc. for Hydra)

__version__ = "0.1.0"
