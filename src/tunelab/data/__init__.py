from tunelab.data.datamodule import BaseDataModule, TextDataModule

__all__ = ["BaseDataModule", "TextDataModule"]
