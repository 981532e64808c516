# Re-export only: the argument checks live in zfcore.errors; import them from there.
from zfcore.errors import check_count, check_feature, check_layer, layer_width, num_classes
__all__ = ["check_count", "check_feature", "check_layer", "layer_width", "num_classes"]
