"""Plain-torch model parts shared by serving and training (no Ray, Kafka or DeepSpeed)."""
