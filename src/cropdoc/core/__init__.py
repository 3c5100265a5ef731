"""What every layer uses and that imports nothing of cropdoc's: errors, atomic writes,
optional extras, progress and logging, figures. No torch."""
