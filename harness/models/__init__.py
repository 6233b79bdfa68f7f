"""Model zoo. For now: the real architectures' configs (``architectures``), used on the meta
device for MAC accounting without weights."""
