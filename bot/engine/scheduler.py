"""diffusers' LCM scheduler, computing the same steps without reading anything back from the GPU.

Each step of diffusers' `LCMScheduler` makes the host wait for the GPU to finish the step's UNet, three times
through values it reads back and, in every step but the last, once through a copy:
- it reads its alphas from a CPU table through the GPU's timestep (`item()`, twice), and compares the next
  timestep, a GPU tensor, with 0;
- it copies the noise drawn by the images' CPU generators from pageable memory, which torch follows with a wait
  for the GPU's stream.

With the UNet replayed from CUDA graphs, the host then has nothing queued: the GPU idles through the rest of the
step, diffusers' loop and the next replay's input copies. `ServedLCMScheduler` computes the same step from what
the host already holds: it keeps the timesteps as Python ints beside the GPU copy that the pipelines iterate
(the SDXL pipelines set the begin index, so no step looks its index up). Noise travels from pinned memory,
without a wait (bot.engine.host_copies).

Every operand keeps the kind it has in diffusers' step: the alphas are CPU scalars, and c_skip and c_out are GPU
tensors computed from the GPU's timestep. The kind decides the rounding. CUDA's elementwise kernels (PyTorch's
`Loops.cuh`) hold a CPU scalar at float precision, but load a GPU tensor at the computation's dtype, half
precision here. So each seed paints what diffusers paints.

For the same reason, the alphas table stays on the CPU. diffusers' `add_noise` (image-to-image, inpainting) moves
it to the GPU for good, and from then on every text-to-image step would round its alphas to half precision: a
seed would paint a slightly different picture after the process's first remix than before it.
"""

from __future__ import annotations

import torch
from diffusers import LCMScheduler
from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput

from bot.engine.host_copies import Generators, draw_noise, to_device_without_waiting


class ServedLCMScheduler(LCMScheduler):
    """`LCMScheduler` whose steps let the host queue the next UNet call while the GPU still runs this one."""

    _host_timesteps: list[int]

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        """diffusers' schedule, also kept on the host."""
        super().set_timesteps(num_inference_steps, None, original_inference_steps, timesteps, strength)
        self._host_timesteps = self.timesteps.tolist()
        if device is not None:
            self.timesteps = to_device_without_waiting(self.timesteps, torch.device(device))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        return_dict: bool = True,
    ) -> LCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """diffusers' step for noise-predicting models without clipping (LCM SSD-1B's configuration), with the
        alphas read through the host's timesteps. Other configurations run diffusers' own step."""
        if self.config.prediction_type != "epsilon" or self.config.thresholding or self.config.clip_sample:
            return super().step(model_output, timestep, sample, generator, return_dict)
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' first")
        if self.step_index is None:
            self._init_step_index(timestep)  # the pipelines set the begin index: no lookup
        index = self.step_index
        current = self._host_timesteps[index]
        following = self._host_timesteps[index + 1] if index + 1 < len(self._host_timesteps) else current

        alpha_prod_t = self.alphas_cumprod[current]
        alpha_prod_t_prev = self.alphas_cumprod[following] if following >= 0 else self.final_alpha_cumprod
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(timestep)
        predicted_original_sample = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        denoised = c_out * predicted_original_sample + c_skip * sample

        if index != self.num_inference_steps - 1:  # the last step adds no noise
            noise = draw_noise(model_output.shape, generator, model_output.device, denoised.dtype)
            prev_sample = alpha_prod_t_prev.sqrt() * denoised + beta_prod_t_prev.sqrt() * noise
        else:
            prev_sample = denoised
        self._step_index += 1
        if not return_dict:
            return prev_sample, denoised
        return LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """diffusers' noising, leaving the alphas table where it was (see the module's docstring). diffusers copies
        it to the samples' device, from pageable memory: here it goes without waiting (bot.engine.host_copies)."""
        table = self.alphas_cumprod
        self.alphas_cumprod = to_device_without_waiting(table, original_samples.device)
        try:
            return super().add_noise(original_samples, noise, timesteps)
        finally:
            self.alphas_cumprod = table
