"""Settings: choose the LLM provider and model, enter a key for this session, test the connection."""

import streamlit as st

from core import ui_cache
from core.config import describe_settings
from core.providers.registry import provider_info, test_connection
from core.review import escape_markdown

st.title("Settings")
base = ui_cache.settings()
signed_in = ui_cache.signed_in_user()
if signed_in:
    c1, c2 = st.columns([4, 1])
    c1.caption(f"Signed in as **{escape_markdown(signed_in)}**")
    if ui_cache.auth_configured() and c2.button("Log out", key="settings.logout"):
        st.logout()

st.subheader("LLM provider")
choices = ["gemini", "openai", "local"]
default = ui_cache.session_settings().resolved_provider
if ui_cache.session_api_key() and not base.provider:
    default = "gemini"
provider = st.radio("Provider", choices, index=choices.index(st.session_state.get("settings.provider") or default),
                    horizontal=True, key="settings.provider_choice",
                    help="gemini: Google's API (key needed) · openai: any OpenAI-compatible server (Ollama, "
                         "vLLM, LM Studio, llama.cpp server) · local: the offline model, no key, no network")
st.session_state["settings.provider"] = provider

if provider == "gemini":
    st.text_input("Gemini model", value=st.session_state.get("settings.gemini_model") or base.gemini_model,
                  key="settings.gemini_model")
    st.text_input("Gemini API key (kept in this browser session only, never saved)", type="password",
                  key="settings.gemini_key",
                  placeholder="set" if base.gemini_api_key else "not set: paste a key or set GEMINI_API_KEY")
elif provider == "openai":
    st.text_input("Server base URL", value=st.session_state.get("settings.openai_base_url") or base.openai_base_url,
                  key="settings.openai_base_url")
    st.text_input("Model", value=st.session_state.get("settings.openai_model") or base.openai_model,
                  key="settings.openai_model")
    # The server's OPENAI_API_KEY goes only to the server's OPENAI_BASE_URL: another URL gets this key or none.
    st.text_input("API key for this server (kept in this browser session only, never saved)", type="password",
                  key="settings.openai_key",
                  help=f"Without one, the server's key is sent only to {base.openai_base_url}; any other URL gets none.")
else:
    st.text_input("GGUF model file (empty: the packaged SmolLM2-135M)",
                  value=st.session_state.get("settings.local_model_path") or base.local_model_path,
                  key="settings.local_model_path")

settings = ui_cache.session_settings()
if st.session_state.get("settings.path_error"):
    st.error(st.session_state["settings.path_error"])
try:
    info = provider_info(settings, api_key=ui_cache.session_api_key())
    st.caption(f"Active: **{info.name}** · model `{info.model}`")
    if info.note:
        st.info(info.note)
except Exception as e:
    ui_cache.show_error(e)

if st.button("Test connection", key="settings.test"):
    with st.spinner("One tiny call …"):
        ok, message = test_connection(settings, api_key=ui_cache.session_api_key())
    (st.success if ok else st.error)(message)

with st.expander("All settings (set by environment variables)"):
    rows = [{"setting": d["name"], "env": d["env"],
             "value": "•••" if d["secret"] and getattr(base, d["name"]) else str(getattr(base, d["name"])),
             "help": d["help"]} for d in describe_settings()]
    st.dataframe(rows, hide_index=True, width="stretch")
