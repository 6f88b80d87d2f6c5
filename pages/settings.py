"""Settings: choose the LLM provider and model, enter a key for this session, test the connection."""

import streamlit as st

from core import ui_cache
from core.config import describe_settings
from core.providers.registry import provider_info, test_connection
from core.review.store import escape_markdown

st.title("Settings")
base = ui_cache.settings()
signed_in = ui_cache.signed_in_user()
if signed_in:
    c1, c2 = st.columns([4, 1])
    c1.caption(f"Signed in as **{escape_markdown(signed_in)}**")
    if ui_cache.auth_configured() and c2.button("Log out", key="settings.logout"):
        st.logout()

st.subheader("LLM provider")
ss = st.session_state
choices = ["gemini", "openai", "local"]
active = provider_info(ui_cache.session_settings(), api_key=ui_cache.session_api_key()).name
# The radio picks a candidate; the active provider changes only after its test passes or "Use anyway".
provider = st.radio("Provider", choices, index=choices.index(active), horizontal=True,
                    key="settings.provider_choice",
                    help="gemini: Google's API (key needed) · openai: any OpenAI-compatible server (Ollama, "
                         "vLLM, LM Studio, llama.cpp server) · local: the offline model, no key, no network")


def keep_key(widget: str, target: str) -> None:
    """A typed key moves out of the widget into the session (it survives page switches), never to disk."""
    typed = (ss.get(widget) or "").strip()
    if typed:
        ss[target] = typed
    ss[widget] = ""


def key_field(label: str, target: str, help_text: str, placeholder: str) -> None:
    widget = f"{target}_input"
    st.text_input(label, type="password", key=widget, on_change=keep_key, args=(widget, target),
                  placeholder=placeholder, help=help_text)
    if ss.get(target):
        with st.container(horizontal=True, vertical_alignment="center"):
            st.caption(f":material/key: {ui_cache.key_hint(ss[target])} (this browser session only, never saved)")
            st.button("Forget key", key=f"{target}_forget", on_click=lambda: ss.pop(target, None),
                      icon=":material/key_off:")


if provider == "gemini":
    st.text_input("Gemini model", value=ss.get("settings.gemini_model") or base.gemini_model,
                  **ui_cache.remembered("settings.gemini_model"))
    key_field("Gemini API key (press Enter to keep it for this browser session)", ui_cache.GEMINI_KEY,
              "kept in memory for this browser session only, never saved",
              "set on the server" if base.gemini_api_key else "not set: paste a key or set GEMINI_API_KEY")
elif provider == "openai":
    st.text_input("Server base URL", value=ss.get("settings.openai_base_url") or base.openai_base_url,
                  **ui_cache.remembered("settings.openai_base_url"))
    st.text_input("Model", value=ss.get("settings.openai_model") or base.openai_model,
                  **ui_cache.remembered("settings.openai_model"))
    # The server's OPENAI_API_KEY goes only to the server's OPENAI_BASE_URL: another URL gets this key or none.
    key_field("API key for this server (press Enter to keep it for this browser session)", ui_cache.OPENAI_KEY,
              f"Without one, the server's key is sent only to {base.openai_base_url}; any other URL gets none.",
              "optional")
else:
    st.text_input("GGUF model file (empty: the packaged SmolLM2-135M)",
                  value=ss.get("settings.local_model_path") or base.local_model_path,
                  **ui_cache.remembered("settings.local_model_path"))

candidate = ui_cache.candidate_settings(provider)
if ss.get("settings.path_error"):
    st.error(ss["settings.path_error"])
try:
    info = provider_info(candidate, api_key=ui_cache.session_api_key())
    if provider == active:
        st.caption(f":material/check_circle: Active: **{info.name}** · model `{info.model}`")
    else:
        st.warning(f"Active: **{active}**. To switch to **{info.name}** (`{info.model}`), test it first — or use "
                   "it anyway.", icon=":material/swap_horiz:")
    if info.note:
        st.info(info.note)
except Exception as e:
    ui_cache.show_error(e)


def switch_to(name: str, message: str) -> None:
    ss["settings.provider"] = name
    ss["settings.flash"] = message


buttons = st.container(horizontal=True)
label = "Test connection" if provider == active else f"Test and switch to {provider}"
if buttons.button(label, key="settings.test", icon=":material/network_check:"):
    with st.spinner("One tiny call …"):
        ok, message = test_connection(candidate, api_key=ui_cache.session_api_key())
    if ok and provider != active:
        switch_to(provider, f"{message} Switched to {provider}.")
        st.rerun()  # the sidebar and every page show the new provider at once
    (st.success if ok else st.error)(message)
if provider != active and buttons.button("Use anyway", key="settings.use_anyway", icon=":material/warning:",
                                   help="switch without a test (runs will fail if it cannot answer)"):
    switch_to(provider, f"Switched to {provider} without a test.")
    st.rerun()
if "settings.flash" in ss:
    st.success(ss.pop("settings.flash"))

with st.expander("All settings (set by environment variables)"):
    rows = [{"setting": d["name"], "env": d["env"],
             "value": "•••" if d["secret"] and getattr(base, d["name"]) else str(getattr(base, d["name"])),
             "help": d["help"]} for d in describe_settings()]
    st.dataframe(rows, hide_index=True, width="stretch")
