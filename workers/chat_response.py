"""The response to one chat request, and the owner of its request slot (workers/slots.py).

The slot is taken when the response starts and given back when it ends: the answer sent, the stream's last event
written, the client gone, or a failure. That is the only place a slot is released (TGI holds its permit in the
stream's state the same way). A failure before anything was sent propagates to the app's error handlers, so it is
an HTTP error with the table's status (common/errors.py), as when a route raises it.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse, Response

from common.disconnect import ClientGone, until_client_leaves
from common.protocol import ChatCompletionRequest
from common.sse import sse_response
from workers.serving import ChatService
from workers.slots import RequestSlot

log = logging.getLogger(__name__)


class ChatResponse(Response):
    def __init__(self, service: ChatService, req: ChatCompletionRequest, client_id: str, interval_s: float):
        self.service, self.req, self.client_id, self.interval_s = service, req, client_id, interval_s
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        async with self.service.slots.hold(self.client_id) as slot:
            response = await self._respond(slot, scope, receive)
            if self.req.stream:  # the stream holds the slot until its end (or the client's leaving)
                await response(scope, receive, send)
                return
        await response(scope, receive, send)  # a whole answer: the slot went as soon as it was ready

    async def _respond(self, slot: RequestSlot, scope, receive) -> Response:
        service, req = self.service, self.req
        try:
            if not req.stream:
                completion = await until_client_leaves(receive, service.answer(req, slot), scope)
                return JSONResponse(completion.model_dump(exclude_none=True))
            first, events = await until_client_leaves(receive, service.start(req, slot), scope)
        except ClientGone:
            log.info("client left; request %s stopped", slot.id)
            return Response(status_code=499)  # nobody reads it: for the access log ("client closed request")
        return sse_response(service.stream_chunks(req, first, events), interval_s=self.interval_s)
