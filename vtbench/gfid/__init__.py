"""gFID tier A: ``vtbench gfid SAMPLES --ref REF``, the ADM evaluation suite on generated samples.

One job per module: ``files`` (npz and token files), ``samples``, ``reference``, ``scoring``, ``run``.

Reports ``gfid``, ``sfid``, ``inception_score``, ``precision`` and ``recall`` (definitions and the ADM evaluator
line references in ``vtbench.metrics.generation``; protocol ``metrics/generation.toml``). Features are the FID
Inception of ``vtbench.metrics.inception``, resized with clean-fid's "clean" resize (the default) or, with
``resize="tf-bilinear"`` (CLI ``--resize adm``), with the TF1 bilinear resize inside the graph ADM's evaluator uses.

**Samples** (``iter_samples``), each read in order and streamed in batches of uint8 ``(B, 3, H, W)``:

- an image folder: every image file below it (recursive, sorted by path), decoded by ``load_image``; no crop or
  resize besides Inception's own;
- an ADM sample batch ``.npz``: ``arr_0`` uint8 ``(N, H, W, 3)`` (NHWC, as ADM's samplers save it; ``arr_1``
  labels, if present, are ignored). It is read member by member from the zip, so a 10 GB batch needs no 10 GB of
  memory. Other layouts (NCHW, float, grey) are refused with the fix;
- a token file ``.npz`` (format below), decoded with a named tokenizer.

**Token file** (``write_token_file`` / ``read_token_file``): an ``.npz`` with

- ``codes``: int64 ``(N, *layout)``, exactly the code tensor the tokenizer's ``encode`` makes at ``height x width``
  (``Tokens.codes``; e.g. ``(N, 16, 16)`` for a 16x16 VQ, ``(N, 8, 8, 4)`` for an RVQ);
- ``tokenizer`` (optional, 0-d str): the ``family.variant`` name; ``--tokenizer`` overrides it;
- ``height``, ``width`` (optional, 0-d int): the image size the codes decode to (default: the card's native size);
- ``labels`` (optional, int64 ``(N,)``): class labels, recorded, not used;
- ``format`` = ``"vtbench-tokens"``, ``format_version`` = 1.

Codes are decoded with ``tok.decode(tok.tokens_from_codes(codes, height, width))`` and quantised as the rFID
protocol does, ``round(clamp(x, 0, 1) * 255)``.

**Reference** (``open_reference``):

- an ``.npz`` of statistics: ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``: ``mu``, ``sigma``,
  ``mu_s``, ``sigma_s`` from ADM's evaluator over the training set, and ``arr_0``: 10,000 uint8 NHWC images), any
  subset of those keys, or vtbench's own reference files (the same keys plus ``features``, float ``(M, 2048)``
  pool_3 features, and ``vtbench_reference``, JSON metadata). gFID needs ``mu``/``sigma`` (else computed from
  ``arr_0``), sFID ``mu_s``/``sigma_s`` (computed from ``arr_0`` only when ``mu`` is absent too, as ADM does),
  precision/recall reference features (``features``, else Inception on ``arr_0``);
- anything ``open_dataset`` accepts (folder, ``embedded``, parquet), preprocessed with ``adm-center-crop`` at
  ``resolution``. Its statistics and (for at most ``pr_reference_size`` images, a seeded subset) its pool_3
  features are cached under ``cache_dir()/gfid_reference/`` keyed by dataset, revision, selection, policy,
  extractor and subset; the cache files are reference ``.npz`` files themselves.

**Mixed pipelines**: ``mu``/``sigma`` (``mu_s``/``sigma_s``) read from an ADM reference file were computed by ADM's
TF evaluator, which resizes to 299 x 299 bilinearly inside its graph. With the default clean-fid resize, ``gfid`` /
``sfid`` against such statistics carry ``extra["warning"]`` (comparable with ADM-evaluated numbers only up to that
resize difference; the fix is ``--resize adm``). With ``resize="tf-bilinear"`` the samples go through ADM's resize
and no warning is given (what remains is the TorchScript port of the same graph); those values are keyed
``gfid@adm``, ``sfid@adm``, ... and written to ``generation-adm/``. A reference whose features came from another
extractor id (weights file or resize) warns on every reference-based value. Warnings that apply together
(rank-deficient N, mixed pipeline, size mismatch) are joined with ``"; "``.

**Sizes** (``gfid_run``): samples record their ``height`` x ``width`` (token files: the size the codes decode to;
folders and ADM ``.npz``: the first image's). A reference of another image size (a dataset at ``resolution``,
an ``.npz``'s ``arr_0``) is refused with ``SizeMismatchError`` unless ``allow_size_mismatch`` (then a warning on
every value). A dataset reference with no ``resolution`` is cropped to the samples' size when they are square,
else to 256.
"""

from __future__ import annotations

from vtbench.gfid.common import (  # noqa: F401
    DEFAULT_RESOLUTION,
    FULL_RANK_N,
    OUTPUTS,
    PR_REFERENCE_SIZE,
    REFERENCE_CACHE_VERSION,
    REFERENCE_META_KEY,
    RESIZE_SUFFIX,
    TOKEN_FILE_FORMAT,
    TOKEN_FILE_VERSION,
    SampleFormatError,
    SizeMismatchError,
    metric_key,
    mixed_pipeline_warning,
)
from vtbench.gfid.files import (  # noqa: F401
    TokenFile,
    check_adm_images,
    iter_npz_rows,
    npz_array_info,
    npz_keys,
    read_token_file,
    write_token_file,
)
from vtbench.gfid.reference import (  # noqa: F401
    Reference,
    check_sizes,
    open_reference,
    reference_image_size,
)
from vtbench.gfid.run import (  # noqa: F401
    gfid_run,
    result_path,
)
from vtbench.gfid.samples import (  # noqa: F401
    Samples,
    iter_samples,
)
from vtbench.gfid.scoring import (  # noqa: F401
    extract_samples,
    score_samples,
    score_state,
)

__all__ = [
    "DEFAULT_RESOLUTION", "FULL_RANK_N", "OUTPUTS", "PR_REFERENCE_SIZE", "REFERENCE_CACHE_VERSION",
    "REFERENCE_META_KEY", "RESIZE_SUFFIX", "Reference", "SampleFormatError", "Samples", "SizeMismatchError",
    "TOKEN_FILE_FORMAT", "TOKEN_FILE_VERSION", "TokenFile", "check_adm_images", "check_sizes",
    "extract_samples", "gfid_run", "iter_npz_rows", "iter_samples", "metric_key", "mixed_pipeline_warning",
    "npz_array_info", "npz_keys", "open_reference", "read_token_file", "reference_image_size", "result_path",
    "score_samples", "score_state", "write_token_file",
]
