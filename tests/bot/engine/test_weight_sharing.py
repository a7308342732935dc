from __future__ import annotations

from bot.engine.pipelines import Pipelines
from bot.engine.weight_sharing import weight_sharing_twin


def test_twin_shares_every_tensor_but_no_module(pipes: Pipelines) -> None:
    unet = pipes.text2img.unet
    twin = weight_sharing_twin(unet)
    assert twin is not unet and twin.down_blocks[0] is not unet.down_blocks[0]
    for (name, ours), (_, theirs) in zip(unet.named_parameters(), twin.named_parameters(), strict=True):
        assert ours is theirs, name


def test_the_tensors_a_twin_owns_are_copies(pipes: Pipelines) -> None:
    layer = pipes.text2img.unet.conv_in
    twin = weight_sharing_twin(layer, own=lambda name: name == "weight")
    assert twin.weight is not layer.weight and twin.weight.data_ptr() != layer.weight.data_ptr()
    assert twin.weight.equal(layer.weight) and twin.bias is layer.bias
