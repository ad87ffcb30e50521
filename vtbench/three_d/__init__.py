"""The 3D track (issue 15): shape datasets, the ``shape@1.0`` metrics and non-learned reference codecs.

- :mod:`vtbench.three_d.data`: meshes and point clouds from a folder (ShapeNet and Objaverse layouts, stable ids,
  content-hashed revision, seeded ``limit``), one recorded normalisation policy, a :class:`~.data.Shape` record.
- :mod:`vtbench.three_d.metrics`: seeded surface sampling, Chamfer L1/L2, F-score, normal consistency, volume IoU;
  per-shape values and a streaming accumulator.
- :mod:`vtbench.three_d.codecs`: Draco (real bytes), an octree occupancy tokenizer and a dense voxel grid, each
  ``encode(shape) -> Encoded`` (payload, bits, tokens) and ``decode(encoded) -> mesh``.
- :mod:`vtbench.three_d.vat`: VAT, a learned shape tokenizer (vtbench's implementation of arXiv:2412.02202) with
  the same codec interface (card ``tokenizers/vat.toml``); :mod:`vtbench.three_d.vat_train` trains it
  (``vtbench train-vat``). These need torch (and manifold3d to train).

The modules need trimesh, DracoPy, libigl, scikit-image and scipy (imported inside the functions that use them);
importing this package imports none of them.
"""
