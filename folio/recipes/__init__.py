"""Multi-step recipes: the step runner (`runner`), the assistant pipeline (`assistant`) and
the video's ladder of models (`ladder`)."""
