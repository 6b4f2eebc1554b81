"""Model code: small, single-device PyTorch modules that import only torch and mm15.config."""
