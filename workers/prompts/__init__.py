"""The prompt template each InternVL family was trained on, and the image placeholder it expands."""
