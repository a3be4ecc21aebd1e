"""A character-level LSTM, optionally with layer normalization inside the cell."""

from __future__ import annotations

import torch
from torch import nn

from normlib.nn import LayerNorm


class LSTMCell(nn.Module):
    """An LSTM cell; with ``layer_norm=True`` it is Ba et al.'s LN-LSTM: the input and the
    recurrent contributions to the gates are layer-normalized separately, and so is the cell
    state before the output ``tanh``. Both versions share this code, so they differ only in
    the normalization."""

    def __init__(self, input_size: int, hidden_size: int, layer_norm: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.input_map = nn.Linear(input_size, 4 * hidden_size, bias=not layer_norm)
        self.hidden_map = nn.Linear(hidden_size, 4 * hidden_size, bias=True)
        norm = (lambda n: LayerNorm(n)) if layer_norm else (lambda n: nn.Identity())
        self.norm_input, self.norm_hidden, self.norm_cell = norm(4 * hidden_size), norm(4 * hidden_size), norm(hidden_size)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        gates = self.norm_input(self.input_map(x)) + self.norm_hidden(self.hidden_map(h))
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.norm_cell(c))
        return h, c


class CharLSTM(nn.Module):
    """Embedding, one (LN-)LSTM layer unrolled over the sequence, and a linear read-out:
    ``(N, T)`` token ids to ``(N, T, vocab)`` logits. Used in ``chapters/03_layer_norm.ipynb``."""

    def __init__(self, vocab_size: int, hidden_size: int = 128, layer_norm: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.cell = LSTMCell(hidden_size, hidden_size, layer_norm)
        self.head = nn.Linear(hidden_size, vocab_size)

    def unroll(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden and cell states at every time step, each ``(N, T, hidden)``, from a
        zero initial state."""
        x = self.embed(ids)
        h = c = x.new_zeros(ids.shape[0], self.cell.hidden_size)
        hidden, cells = [], []
        for t in range(ids.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
            hidden.append(h)
            cells.append(c)
        return torch.stack(hidden, dim=1), torch.stack(cells, dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.unroll(ids)[0])
