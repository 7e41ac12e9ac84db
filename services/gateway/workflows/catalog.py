"""The operators a workflow node may name: the service role that runs each, the kinds of model
it takes, its modes, and its typed inputs and outputs.

| operator | role | model | inputs | outputs |
|---|---|---|---|---|
| text_encode | text_encoder | a pipeline | text | conditioning |
| image_encode | image_encoder | an IP-Adapter | image | image_embeds |
| vae_encode | vae | a pipeline | image, mask (mode inpaint), width, height | latent |
| vae_decode | vae | a pipeline | latents | image |
| latent_init | (the gateway) | none | width, height | latent |
| denoise | denoiser | a pipeline | positive, negative, latent, seed, steps, ... | latents |
| ar_embed | ar_embed | an AR model | prompt | embeddings |
| embed_adapter | ar_embed | an embedding adapter | embeddings, pooled | conditioning |
"""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.workflows.spec import Literal, Operator, ValueType

T = ValueType
PIPELINES = ("base", "inpainting")


@dataclass(frozen=True)
class Port:
    name: str
    type: ValueType
    required: bool = True
    default: Literal | None = None      # what an absent optional input means
    doc: str = ""


@dataclass(frozen=True)
class OperatorSpec:
    operator: Operator
    role: str                            # the service role that runs it; "" = the gateway
    model_kinds: tuple[str, ...]         # ModelStore kinds its model may be; () = no model
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    modes: tuple[str, ...] = ("",)       # the first is the default
    doc: str = ""

    def port(self, name: str) -> Port | None:
        return next((p for p in self.inputs if p.name == name), None)

    def output(self, name: str) -> Port | None:
        return next((p for p in self.outputs if p.name == name), None)


OPERATORS: dict[Operator, OperatorSpec] = {s.operator: s for s in (
    OperatorSpec(
        Operator.TEXT_ENCODE, "text_encoder", PIPELINES,
        (Port("text", T.TEXT, False, "", "the prompt"),),
        (Port("conditioning", T.CONDITIONING),),
        modes=("prompt", "negative"),
        doc="mode negative: an empty text is all zeros where the family's pipelines zero "
            "an empty negative prompt"),
    OperatorSpec(
        Operator.IMAGE_ENCODE, "image_encoder", ("ip_adapter",),
        (Port("image", T.IMAGE),),
        (Port("image_embeds", T.IMAGE_EMBEDS),),
        doc="the IP-Adapter's image encoder; runs with the denoise node that uses it"),
    OperatorSpec(
        Operator.VAE_ENCODE, "vae", PIPELINES,
        (Port("image", T.IMAGE), Port("mask", T.MASK, False, None, "mode inpaint"),
         Port("width", T.INT, False, 0, "0: the image's, to the family's grid"),
         Port("height", T.INT, False, 0, "0: the image's, to the family's grid")),
        (Port("latent", T.LATENT),),
        modes=("image", "inpaint"),
        doc="mode image: image-to-image; mode inpaint: the image and its masked copy, "
            "for an inpainting model"),
    OperatorSpec(
        Operator.VAE_DECODE, "vae", PIPELINES,
        (Port("latents", T.DENOISED),),
        (Port("image", T.IMAGE),)),
    OperatorSpec(
        Operator.LATENT_INIT, "", (),
        (Port("width", T.INT, False, 0, "0: the model's default"),
         Port("height", T.INT, False, 0, "0: the model's default")),
        (Port("latent", T.LATENT),),
        doc="noise of a size, drawn by the denoiser from the denoise node's seed"),
    OperatorSpec(
        Operator.DENOISE, "denoiser", PIPELINES,
        (Port("positive", T.CONDITIONING),
         Port("negative", T.CONDITIONING, False, None, "needed when guidance_scale > 1"),
         Port("latent", T.LATENT),
         Port("seed", T.INT, False, 0),
         Port("steps", T.INT, False, 0, "0: the gateway's default"),
         Port("guidance_scale", T.FLOAT, False, None, "absent: the gateway's default"),
         Port("strength", T.FLOAT, False, 0.0, "0: 0.8 for image-to-image, 1.0 to inpaint"),
         Port("scheduler", T.TEXT, False, "", "empty: the model's own"),
         Port("num_images", T.INT, False, 1, "image i is drawn from seed + i")),
        (Port("latents", T.DENOISED),),
        doc="with its ControlNets, IP-Adapters and LoRAs; one per workflow"),
    OperatorSpec(
        Operator.AR_EMBED, "ar_embed", ("ar_embed",),
        (Port("prompt", T.TEXT),),
        (Port("embeddings", T.EMBEDDINGS),),
        doc="image-token embeddings predicted by an autoregressive model"),
    OperatorSpec(
        Operator.EMBED_ADAPTER, "ar_embed", ("embed_adapter",),
        (Port("embeddings", T.EMBEDDINGS),
         Port("pooled", T.CONDITIONING, False, None,
              "its pooled embeddings are kept (the denoiser's family may need them)")),
        (Port("conditioning", T.CONDITIONING),),
        doc="the adapter's output replaces the prompt embeddings"),
)}

# Values that are tensors held by a producer for one reader: such an output feeds one input.
TENSOR_TYPES = frozenset({T.CONDITIONING, T.LATENT, T.DENOISED, T.EMBEDDINGS, T.IMAGE_EMBEDS})
# Values a workflow input or a literal may give.
INPUT_TYPES = frozenset({T.TEXT, T.INT, T.FLOAT, T.IMAGE, T.MASK})


def accepts(port: ValueType, given: ValueType) -> bool:
    """Whether a value of type ``given`` may feed a port of type ``port`` (integers widen to
    floats; an image literal may be a mask)."""
    return (port == given or (port == T.FLOAT and given == T.INT)
            or (port == T.MASK and given == T.IMAGE))
