"""The analysis layer: rankings read from studies, their statistics and plots, and the dashboard."""
