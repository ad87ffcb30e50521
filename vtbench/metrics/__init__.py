"""Metrics. Each module registers its metric lazily here, so listing metrics imports no heavy code."""

from vtbench.metrics.base import METRICS, Batch, Metric, MetricUnavailable, MetricValue, Output

METRICS.register("psnr", "vtbench.metrics.pixel:PSNR")
METRICS.register("ssim", "vtbench.metrics.pixel:SSIM")
METRICS.register("lpips", "vtbench.metrics.lpips:LPIPSMetric")
METRICS.register("rfid", "vtbench.metrics.fid:RFID")
METRICS.register("pfid", "vtbench.metrics.pfid:PFID")
METRICS.register("compression", "vtbench.metrics.compression:Compression")
METRICS.register("speed", "vtbench.metrics.speed:Speed")
METRICS.register("detail", "vtbench.metrics.detail:Detail")
METRICS.register("text", "vtbench.metrics.text:TextAccuracy")
METRICS.register("ocr", "vtbench.metrics.text:OCRErrorRate")
METRICS.register("generation", "vtbench.metrics.generation:GenerationMetrics")
METRICS.register("shape", "vtbench.three_d.task:ShapeQuality")
METRICS.register("shape_compression", "vtbench.three_d.task:ShapeCompression")

__all__ = ["METRICS", "Batch", "Metric", "MetricUnavailable", "MetricValue", "Output"]
