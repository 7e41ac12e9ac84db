"""The gateway's attachments, one per denoise add-on, in the order the request flow runs them.

See :mod:`services.gateway.attachments.base` for the hooks. Adding one: a module with its
Attachment and kind here, its add-on in :mod:`services.denoiser.addons`, its fields in the
protos.
"""

from __future__ import annotations

from diffusion.v1 import gateway_pb2
from services.common.errors import InvalidArgument
from services.common.model_store import ModelStore
from services.gateway.attachments.base import Attachment, AttachmentKind
from services.gateway.generation import Generation
from services.gateway.settings import GatewaySettings


class AttachmentKinds:
    def __init__(self, kinds: list[AttachmentKind]) -> None:
        self.kinds = kinds

    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> list[Attachment]:
        family = store.family(gen.model)
        found = []
        for kind in self.kinds:
            attachment = kind.validate(req, gen, store, limits)
            if attachment is None:
                continue
            if attachment.name not in family.addons:
                raise InvalidArgument(f"{attachment.label or attachment.name} is not served on "
                                      f"{family.name} models ({gen.model!r})",
                                      field=attachment.field)
            found.append(attachment)
        return found
