"""Writes tf_resize_bilinear_golden.npz: TensorFlow's own ``ResizeBilinear`` (``align_corners=False``,
``half_pixel_centers=False``: the TF1 legacy coordinates of the 2015 Inception graph that ADM's evaluator feeds)
on small random uint8 images. Run outside the project with TensorFlow installed (``pip install tensorflow-cpu``;
the committed file came from TF 2.21.0): ``python tests/data/make_tf_resize_golden.py``, from ``tests/data``.
tests/test_fid.py compares ``vtbench.metrics.inception.resize_tf_bilinear`` with these outputs bit for bit."""
import numpy as np
import tensorflow as tf

rng = np.random.default_rng(2026)
# up- and downsampling, square and not, identity; sizes small enough to commit
cases = [((5, 7), 11), ((16, 16), 23), ((9, 4), 13), ((32, 24), 29), ((3, 3), 8), ((12, 12), 12),
         ((64, 48), 29), ((40, 40), 13), ((97, 61), 31), ((7, 100), 17)]
out = {"tensorflow_version": np.array(tf.__version__)}
for i, ((h, w), size) in enumerate(cases):
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    y = tf.raw_ops.ResizeBilinear(images=tf.constant(img[None].astype(np.float32)), size=[size, size],
                                  align_corners=False, half_pixel_centers=False).numpy()[0]
    out[f"image_{i}"] = img
    out[f"resized_{i}"] = y.astype(np.float32)
np.savez_compressed("tf_resize_bilinear_golden.npz", **out)
print(tf.__version__)
