"""Which InternVL family a checkpoint is (read from its own config files) and the prompt template it was trained on."""
