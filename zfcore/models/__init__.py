"""Architectures and their weights: one spec registry (``specs``), weight files (``weights``) and the
reader that checks an .npz before trusting it (``_safenpz``). numpy only; torch is imported inside the
functions that read .pth files."""
from zfcore.models.specs import (FMNIST_ZF, INPUTS, SPECS, input_shape, alexnet_spec, build, check_params, features_spec,
                                 get_spec, kaiming_params, last_linear, param_shapes, vgg16_spec, zfnet_spec)
from zfcore.models.weights import (ASSETS, TORCHVISION_FILES, WEIGHTS_ENV, build_model, checkpoints,
                                   default_weights_path, load_checkpoint, load_model, load_npz, load_weights,
                                   save_npz, save_weights, torchvision_names, torchvision_to_zfcore,
                                   zfcore_to_torchvision)

__all__ = ["FMNIST_ZF", "INPUTS", "SPECS", "input_shape", "alexnet_spec", "build", "check_params", "features_spec", "get_spec",
           "kaiming_params", "last_linear", "param_shapes", "vgg16_spec", "zfnet_spec",
           "ASSETS", "TORCHVISION_FILES", "WEIGHTS_ENV", "build_model", "checkpoints", "default_weights_path",
           "load_checkpoint", "load_model", "load_npz", "load_weights", "save_npz", "save_weights",
           "torchvision_names", "torchvision_to_zfcore", "zfcore_to_torchvision"]
