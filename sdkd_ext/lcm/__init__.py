"""Few-step LoRAs by latent consistency distillation (LCM): the objective, the job and its command."""
