"""xGen-MM (BLIP-3), FiRE's backbone, ported natively to transformers 5 (no remote code)."""

from cir_lightning.backbones.xgenmm.backbone import XGenMMBackbone
from cir_lightning.backbones.xgenmm.loading import check_index, load_xgenmm, published_weight_shapes
from cir_lightning.backbones.xgenmm.modeling import XGenMMConfig, XGenMMModel
from cir_lightning.backbones.xgenmm.processing import XGenMMImageProcessor, XGenMMProcessor
from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm

__all__ = ["XGenMMBackbone", "XGenMMConfig", "XGenMMImageProcessor", "XGenMMModel", "XGenMMProcessor",
           "check_index", "load_xgenmm", "make_tiny_xgenmm", "published_weight_shapes"]
