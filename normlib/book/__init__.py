"""The book's workshop: what the chapters of normbook share, kept apart from the library.

Models (``normlib.book.models``), the one training loop (:mod:`normlib.book.train`), the
datasets (:mod:`normlib.book.data`), the figure style (:mod:`normlib.book.plot`), small GANs
(:mod:`normlib.book.gan`), the executable derivations (:mod:`normlib.book.backward`,
:mod:`normlib.book.quadratic`, :mod:`normlib.book.invariance`), process helpers
(:mod:`normlib.book.processes`) and the kernel benchmark (``python -m normlib.book.bench``).

It builds on the library (:mod:`normlib`) and never the other way round. It needs the ``book``
extra (numpy, tqdm, matplotlib, ...): ``pip install "normlib[book]"``. Its API serves the
chapters and may change with them; the library's is the stable one.
"""
