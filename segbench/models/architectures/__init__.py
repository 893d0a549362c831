"""Segmentation architectures, one module per method; importing a module registers its builders.

The import order is the order of ``segbench.list_models()`` and of the review's tables: by year.
"""

from segbench.models.architectures import (  # noqa: F401  (registration)
    fcn_vgg,  # fcn32s, fcn16s, fcn8s: the paper's VGG16 nets
    fcn_resnet,  # fcn: torchvision's dilated-ResNet variant
    unet,
    segnet,
    deeplab_v1,
    pspnet,
    deeplab,
    lraspp,
    segformer,
    upernet,
)
