// sdkd tab page script (A1111 and Forge load every javascript/*.js). It uses the web UI's page helpers where they
// exist (gradioApp, onUiLoaded, randomId, requestProgress) and falls back without them, so a page that lacks one
// still runs every job: without randomId the job gets its own id, without requestProgress no progress bar.

function sdkd_root() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

// A job id in the web UI's own format ("task(...)"), which /internal/progress follows.
function sdkd_task_id() {
    if (typeof randomId === "function") return randomId();
    var chars = "abcdefghijklmnopqrstuvwxyz0123456789", id = "";
    for (var i = 0; i < 15; i++) id += chars[Math.floor(Math.random() * chars.length)];
    return "task(" + id + ")";
}

// Confirm before overwriting an existing checkpoint.
function sdkd_confirm_overwrite() {
    var button = sdkd_root().querySelector("#sdkd_prune");
    if (!button) return;
    button.addEventListener("click", function (event) {
        var overwrite = sdkd_root().querySelector("#sdkd_overwrite input");
        if (overwrite && overwrite.checked && !confirm("Overwrite the existing student checkpoint?")) {
            event.stopImmediatePropagation();
        }
    }, true);
}

if (typeof onUiLoaded === "function") {
    onUiLoaded(sdkd_confirm_overwrite);
} else if (typeof document !== "undefined") {
    document.addEventListener("DOMContentLoaded", sdkd_confirm_overwrite);
}

// Run before each sdkd job (the tab's `page_js`): give the job an id, sent as its first input, and let the web UI's
// own progress bar follow it through /internal/progress, as the checkpoint merger does.
function sdkd_submit() {
    var id = sdkd_task_id();
    var status = sdkd_root().querySelector("#sdkd_status");
    if (typeof requestProgress === "function" && status) {
        requestProgress(id, status, null, function () {});
    }
    var args = Array.from(arguments);
    args[0] = id;
    return args;
}
