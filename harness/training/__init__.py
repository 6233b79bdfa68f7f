"""Training and search: the layer above the methods and the engine.

The DiffSparse trainer (``diffsparse``) and its training files (``train_file``), the search baselines over
its level space (``search``), the DiffSparse-vs-search comparison (``compare``) and the SparseDiT
fine-tune (``sparsedit``) build methods, run them through the engine and evaluate them with the metrics;
nothing below this layer imports it.
"""
