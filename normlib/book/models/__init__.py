"""The small models the chapters train."""

from normlib.book.models.cnn import SmallCNN
from normlib.book.models.conditional import DiffusionMLP, LabelToImage
from normlib.book.models.convnext import ConvNeXtMAE
from normlib.book.models.gpt import GPT
from normlib.book.models.mlp import MLP, MultitaskMLP, ShiftingNoise
from normlib.book.models.ngpt import NGPT
from normlib.book.models.resnet import ResNet
from normlib.book.models.rnn import CharLSTM
from normlib.book.models.style import RandomEncoder, VGG19Encoder

__all__ = ["MLP", "MultitaskMLP", "ShiftingNoise", "SmallCNN", "ConvNeXtMAE", "DiffusionMLP", "LabelToImage", "ResNet", "CharLSTM", "GPT", "NGPT", "VGG19Encoder", "RandomEncoder"]
