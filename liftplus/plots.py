"""An HTML page template for ``dvc plots show`` that renders without internet.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so it is
blank offline. ``vl-convert-python`` ships those libraries; this template
inlines them and keeps only DVC's ``{plot_divs}`` placeholder (no ``{scripts}``,
which would add the CDN tags back). ``make setup`` writes it to
``.dvc/plots/offline.html`` and points DVC's ``plots.html_template`` at it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from liftplus.io import write_text

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>liftplus plots</title>
<script type="text/javascript">
{bundle}
</script>
<style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def offline_template() -> str:
    import vl_convert

    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    return PAGE.format(bundle=bundle)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else ".dvc/plots/offline.html")
    write_text(out, offline_template())
    print(f"offline plots template → {out}")


if __name__ == "__main__":
    main()
