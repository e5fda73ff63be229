"""Pictures and pages for people: heatmap overlays, plots and the HTML report."""
