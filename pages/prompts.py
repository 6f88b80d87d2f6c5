"""Prompts: edit the respondent, correspondent and instruction prompts; every save is a new version."""

import pandas as pd
import streamlit as st

from core import ui_cache
from core.generation.prompts import KINDS, PLACEHOLDER_HELP, PLACEHOLDERS, TEMPLATES, PromptLibrary

st.title("Prompts")
st.caption("Every save is a new immutable version; runs record the versions they used.")
try:
    library = PromptLibrary(ui_cache.workbench().db)
    library.ensure_defaults()
except Exception as e:
    ui_cache.show_error(e)
    st.stop()

kind = st.segmented_control("Prompt", KINDS, default="respondent", key="prompts.kind") or "respondent"
required, allowed = PLACEHOLDERS[kind]
st.caption("Placeholders: " + " · ".join(f"`{{{p}}}` {PLACEHOLDER_HELP[p]}" + (" (required)" if p in required else "")
                                         for p in sorted(allowed)))
current = library.current(kind)

with st.expander("Start from a domain template"):
    template = st.selectbox("Template", list(TEMPLATES), format_func=lambda t: f"{TEMPLATES[t].name} — "
                            f"{TEMPLATES[t].description}", key="prompts.template")
    if st.button("Load into the editor", key="prompts.load_template"):
        st.session_state[f"prompts.text.{kind}"] = getattr(TEMPLATES[template], kind)
        st.session_state[f"prompts.template_used.{kind}"] = template

text_key = f"prompts.text.{kind}"
if text_key not in st.session_state:
    st.session_state[text_key] = current["text"]
st.text_area(f"{kind.capitalize()} prompt (editing from v{current['version']})", height=380, key=text_key)
c1, c2 = st.columns([1, 2])
name = c1.text_input("Version name", key=f"prompts.name.{kind}")
note = c2.text_input("Note (what changed and why)", key=f"prompts.note.{kind}")
if "prompts.error" in st.session_state:
    ui_cache.show_error(st.session_state.pop("prompts.error"))
if "prompts.flash" in st.session_state:
    st.success(st.session_state.pop("prompts.flash"))
if st.button("Save as new version", type="primary", key=f"prompts.save.{kind}", icon=":material/save:"):
    try:
        row = library.save(kind, st.session_state[text_key], name=name, note=note,
                           template=st.session_state.get(f"prompts.template_used.{kind}", ""))
        # Redraw: the editor's label ("editing from vN") and the versions table must show the new version.
        st.session_state["prompts.flash"] = f"Saved {kind} v{row['version']}."
        st.rerun()
    except Exception as e:
        ui_cache.show_error(e)

st.subheader("Versions")
history = library.history(kind)
st.dataframe(pd.DataFrame(history)[["id", "version", "name", "note", "template", "created_at"]], hide_index=True,
             width="stretch")
chosen = st.selectbox("Inspect a version", [h["id"] for h in history], key=f"prompts.inspect.{kind}",
                      format_func=lambda i: next(f"v{h['version']} · {h['name']}" for h in history if h["id"] == i))
if chosen:
    diff = library.diff(chosen)
    st.code(diff or "(first version: nothing to compare with)", language="diff")
    def restore(version_id: int) -> None:
        """A callback: it runs before the editor is drawn, so the editor may take the restored text (setting a
        drawn widget's value in the script raises StreamlitAPIException and leaves the editor stale)."""
        try:
            row = library.restore(version_id)
            st.session_state[text_key] = row["text"]
            st.session_state["prompts.flash"] = f"Restored as v{row['version']}."
        except Exception as e:  # shown at the top of the page on this run, never as a traceback
            st.session_state["prompts.error"] = e

    st.button("Restore this version (saves it as the newest)", key=f"prompts.restore.{kind}", on_click=restore,
              args=(chosen,))
