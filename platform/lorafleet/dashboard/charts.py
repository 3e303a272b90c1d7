"""Server-drawn SVG charts: no JavaScript library, no CDN, readable without scripts."""

from __future__ import annotations

import datetime as dt
from html import escape

# Colour-blind-safe palette (Okabe–Ito), then greys for the tail.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
OTHER = "#999999"


def usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.6f}".rstrip("0").rstrip(".") if micro % 10_000 else f"${micro / 1_000_000:,.2f}"


def stacked_bars(days: list[dt.date], series: dict[str, dict[dt.date, int]], title: str, max_series: int = 7) -> str:
    """Daily totals stacked by series (largest first, the rest as "other"), with a text table fallback."""
    totals = sorted(series, key=lambda name: -sum(series[name].values()))
    shown, rest = totals[:max_series], totals[max_series:]
    layers = [(name, PALETTE[i % len(PALETTE)], series[name]) for i, name in enumerate(shown)]
    if rest:
        other: dict[dt.date, int] = {}
        for name in rest:
            for day, value in series[name].items():
                other[day] = other.get(day, 0) + value
        layers.append(("other", OTHER, other))
    width, height, left, bottom = 720, 220, 70, 24
    plot_w, plot_h = width - left - 10, height - bottom - 10
    peak = max((sum(layer[2].get(day, 0) for layer in layers) for day in days), default=0) or 1
    bar_w = plot_w / max(1, len(days))
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title" class="chart">',
             f'<title id="chart-title">{escape(title)}</title>',
             f'<line x1="{left}" y1="{10 + plot_h}" x2="{width - 10}" y2="{10 + plot_h}" stroke="#555"/>',
             f'<text x="{left - 6}" y="16" text-anchor="end" font-size="11">{escape(usd(peak))}</text>',
             f'<text x="{left - 6}" y="{10 + plot_h}" text-anchor="end" font-size="11">$0</text>']
    for index, day in enumerate(days):
        y = 10 + plot_h
        x = left + index * bar_w
        for name, colour, values in layers:
            value = values.get(day, 0)
            if not value:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{escape(f"{day:%b %d} {name}: {usd(value)}")}</title></rect>')
        if index % max(1, len(days) // 6) == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="11">'
                         f'{day:%b %d}</text>')
    parts.append("</svg>")
    legend = "".join(f'<li><svg class="swatch" width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
                     f'fill="{colour}"/></svg>{escape(name)}</li>' for name, colour, _ in layers)
    return "".join(parts) + f'<ul class="legend" aria-label="Legend">{legend}</ul>'


def loss_curve(points: list[tuple[int, float]], title: str, valid: list[tuple[int, float]] | None = None) -> str:
    """Training loss by step as a line, and the validation loss (``valid``, measured at epochs' ends) as a
    dashed line with a dot at each measure, on one scale, with a legend when both are shown; the values
    are a text table fallback in the page."""
    if not points:
        return ""
    valid = valid or []
    width, height, left, bottom = 720, 220, 70, 24
    plot_w, plot_h = width - left - 10, height - bottom - 10
    steps = [step for step, _ in points + valid]
    losses = [loss for _, loss in points + valid]
    low, high = min(losses), max(losses)
    span, first, last = (high - low) or 1.0, min(steps), max(steps)
    x = lambda step: left + (plot_w * (step - first) / ((last - first) or 1))  # noqa: E731
    y = lambda loss: 10 + plot_h * (high - loss) / span  # noqa: E731

    def line(series: list[tuple[int, float]]) -> str:
        return " ".join(f"{'M' if i == 0 else 'L'}{x(step):.1f},{y(loss):.1f}" for i, (step, loss) in enumerate(series))

    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="loss-title" class="chart">',
        f'<title id="loss-title">{escape(title)}</title>',
        f'<line x1="{left}" y1="{10 + plot_h}" x2="{width - 10}" y2="{10 + plot_h}" stroke="#555"/>',
        f'<text x="{left - 6}" y="16" text-anchor="end" font-size="11">{high:.3f}</text>',
        f'<text x="{left - 6}" y="{10 + plot_h}" text-anchor="end" font-size="11">{low:.3f}</text>',
        f'<text x="{left}" y="{height - 6}" font-size="11">step {first}</text>',
        f'<text x="{width - 10}" y="{height - 6}" text-anchor="end" font-size="11">step {last}</text>',
        f'<path d="{line(points)}" fill="none" stroke="{PALETTE[0]}" stroke-width="2" class="train-loss"/>']
    if valid:
        parts.append(f'<path d="{line(valid)}" fill="none" stroke="{PALETTE[1]}" stroke-width="2" '
                     'stroke-dasharray="6 4" class="valid-loss"/>')
        parts += [f'<circle cx="{x(step):.1f}" cy="{y(loss):.1f}" r="3" fill="{PALETTE[1]}" class="valid-point">'
                  f'<title>step {step}: validation loss {loss:.4f}</title></circle>' for step, loss in valid]
    parts.append("</svg>")
    if not valid:
        return "".join(parts)
    legend = "".join(f'<li><svg class="swatch" width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
                     f'fill="{colour}"/></svg>{name}</li>' for name, colour in (("training loss", PALETTE[0]),
                                                                             ("validation loss", PALETTE[1])))
    return "".join(parts) + f'<ul class="legend" aria-label="Legend">{legend}</ul>'
