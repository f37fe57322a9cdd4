"""The Checks page's image-fidelity section (issue 11): per image variable, the three figures of
:mod:`mdcm.fidelity` (probe agreement, Fréchet distance, sharpness) next to their real-vs-real
floors, what they flag, and full-size grids of real and generated images.

The figures train a small probe on the study's images (seconds to a minute on a CPU), so they are
computed on request and then kept per model and data version for the app process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from mdcm_app import plots

#: generated (and held-out real, per half) images the figures compare
N_IMAGES = 1000
#: images per full-size grid
GRID_IMAGES = 16


@st.cache_resource(show_spinner="Measuring image fidelity (training a probe on the data)…")
def _figures(model_id: str, data_key: str, _model: Any, _study: Any) -> dict[str, Any]:
    from mdcm.fidelity import model_fidelity

    return model_fidelity(_model, _study, n=N_IMAGES, seed=0)


def _table(fid: Any) -> pd.DataFrame:
    rows = [
        {
            "figure": r["figure"],
            "generated": r["generated"],
            "real vs real (floor)": r["real (floor)"],
            "ok": "yes" if r["ok"] else "no",
        }
        for r in fid.rows()
    ]
    return pd.DataFrame(rows)


def _per_class(fid: Any) -> pd.DataFrame:
    rows = []
    for a in fid.agreement:
        for c in a.classes:
            rows.append(
                {
                    "label": a.label,
                    "class": c.value,
                    "probe recall, generated": c.generated_recall,
                    "probe recall, real": c.real_recall,
                    "generated images": c.generated_n,
                    "real images": c.real_n,
                }
            )
    return pd.DataFrame(rows)


def _full_size_grids(variable: str, real: Any, fake: Any) -> None:
    """Real and generated images at their own resolution (no enlargement above 32 px)."""
    side = int(np.asarray(real[:1]).shape[-1])
    scale = max(1, 64 // side)
    c1, c2 = st.columns(2)
    for col, src, name in ((c1, real, "data"), (c2, fake, "model")):
        images = np.asarray(src[:GRID_IMAGES])
        grid = plots.image_grid(images, ncol=4, scale=scale)
        col.image(grid, caption=f"{variable}: {name}, full size", width="content")
        col.download_button(
            f"Download full-size {name} grid (PNG)",
            plots.png_bytes(grid),
            file_name=f"{variable}_{name}_full.png",
            mime="image/png",
            key=f"fid_grid_{variable}_{name}",
        )


def section(model_id: str, data_key: str, model: Any, study: Any, fake: Any) -> None:
    """The fidelity section: figures on request (cached), flags, per-class table, grids."""
    images = model.schema.of_kind("image")
    if not images:
        return
    st.subheader("Image fidelity: generated vs real images")
    st.caption(
        "A probe trained on this study's real images reads each image's categorical parents "
        "and children off held-out real images and off generated ones; the Fréchet distance "
        "compares the probe's features of both; sharpness is the high-frequency energy of "
        "generated images over that of real ones. Each figure stands next to its floor: the "
        "same figure between two halves of the real images."
    )
    key = f"fid_show_{model_id}"
    if not st.session_state.get(key):
        if st.button("Measure image fidelity", key="fid_run", icon=":material/straighten:"):
            st.session_state[key] = True
            st.rerun()
        return
    try:
        results = _figures(model_id, data_key, model, study)
    except ValueError as exc:
        st.info(f"Image fidelity cannot be measured here: {exc}")
        return
    obs = study.observational
    for v in images:
        fid = results.get(v)
        if fid is None:
            continue
        shape = "x".join(str(s) for s in fid.shape)
        st.markdown(f"**{v}** ({shape}; {fid.n_generated} generated vs {fid.n_real} real)")
        st.dataframe(_table(fid), hide_index=True, width="stretch")
        flags = fid.flags()
        if flags:
            st.warning("\n".join(f"- {p}" for p in flags), icon=":material/image_search:")
        else:
            st.success("Generated images read like real ones on all three figures.")
        for n in fid.notes:
            st.caption(n)
        if fid.agreement:
            with st.expander(f"Per class: what the probe reads off {v}"):
                st.dataframe(_per_class(fid), hide_index=True, width="stretch")
        _full_size_grids(v, obs.columns[v], fake[v])
