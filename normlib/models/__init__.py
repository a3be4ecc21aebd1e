"""The small models the chapters train."""

from normlib.models.cnn import SmallCNN
from normlib.models.gpt import GPT
from normlib.models.mlp import MLP
from normlib.models.ngpt import NGPT
from normlib.models.rnn import CharLSTM
from normlib.models.style import RandomEncoder, VGG19Encoder

__all__ = ["MLP", "SmallCNN", "CharLSTM", "GPT", "NGPT", "VGG19Encoder", "RandomEncoder"]
