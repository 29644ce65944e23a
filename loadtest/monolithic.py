"""Baseline (b) of the benchmark: one Ray Serve deployment holding the whole diffusers pipeline,
the shape of Ray's own Stable Diffusion example (FastAPI ingress, PNG answer, one replica that
runs one request at a time)."""

import asyncio
import io
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.serve import Application

app = FastAPI()


@serve.deployment(max_ongoing_requests=1)
@serve.ingress(app)
class MonolithicStableDiffusion:
    def __init__(self, model_dir: str, scheduler: str = "ddim") -> None:
        import torch
        from diffusers import StableDiffusionPipeline

        from loadtest.bench import scheduler_class

        self._pipe = StableDiffusionPipeline.from_pretrained(model_dir)
        self._pipe.scheduler = scheduler_class(scheduler).from_config(self._pipe.scheduler.config)
        self._pipe.set_progress_bar_config(disable=True)
        self._torch = torch

    @app.post("/generate")
    async def generate(self, request: Request) -> Response:
        body = await request.json()
        # Run the pipeline off the event loop, as a sync Serve handler would.
        return await asyncio.to_thread(self._generate, body)

    def _generate(self, body: dict[str, Any]) -> Response:
        image = self._pipe(
            body["prompt"],
            num_inference_steps=int(body.get("steps", 20)),
            generator=self._torch.Generator().manual_seed(int(body.get("seed", 0))),
        ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")


def build_monolithic(model_dir: str, scheduler: str = "ddim") -> Application:
    return MonolithicStableDiffusion.bind(model_dir, scheduler)
