from tunelab.data.datamodule import BaseDataModule
from tunelab.data.text import TextDataModule
from tunelab.data.language_modeling import LanguageModelingDataModule
from tunelab.data.token_classification import TokenClassificationDataModule

__all__ = ["BaseDataModule", "TextDataModule", "TokenClassificationDataModule", "LanguageModelingDataModule"]
