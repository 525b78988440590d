"""Vocabulary facts shared by the stages: token → raw bytes → old pieces (`pieces`), architecture facts as
schema-checked data (`arch`, `archs.yaml`), the one output path for new vocabulary matrices (`output`), the
float64 least squares of LEP (`lstsq`) and the one LoRA reader/merge (`lora`)."""
