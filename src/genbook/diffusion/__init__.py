"""Diffusion models (chapter 6): schedules and the forward process, the epsilon loss, DDPM, DDIM and its inversion,
classifier and classifier-free guidance, EDM's Heun sampler, the variational bound on discrete images, progressive
distillation."""

from genbook.diffusion.distill import X0Student, distillation_loss, distillation_target, halve, new_student
from genbook.diffusion.latent import LatentNormalizer
from genbook.diffusion.likelihood import discretized_gaussian_log_likelihood, gaussian_kl, vlb
from genbook.diffusion.samplers import (
    classifier_free,
    classifier_guided,
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddim_steps,
    ddpm_sample,
    edm_heun_sample,
    edm_sigmas,
    eps_loss,
    guide,
)
from genbook.diffusion.schedule import Schedule, cosine_alpha_bar, cosine_schedule, linear_schedule

__all__ = [
    "X0Student",
    "LatentNormalizer",
    "Schedule",
    "classifier_free",
    "guide",
    "classifier_guided",
    "cosine_alpha_bar",
    "cosine_schedule",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddim_steps",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "distillation_loss",
    "distillation_target",
    "edm_heun_sample",
    "edm_sigmas",
    "eps_loss",
    "gaussian_kl",
    "halve",
    "linear_schedule",
    "new_student",
    "vlb",
]
