// sdkd tab: confirm before overwriting an existing checkpoint.
onUiLoaded(function () {
    const button = gradioApp().querySelector("#sdkd_prune");
    if (!button) return;
    button.addEventListener("click", function (event) {
        const overwrite = gradioApp().querySelector("#sdkd_overwrite input");
        if (overwrite && overwrite.checked && !confirm("Overwrite the existing student checkpoint?")) {
            event.stopImmediatePropagation();
        }
    }, true);
});

// Run before each sdkd job (the tab's `page_js`): give the job an id, sent as its first input, and let the web UI's
// own progress bar follow it through /internal/progress, as the checkpoint merger does.
function sdkd_submit() {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById("sdkd_status"), null, function () {});
    var args = Array.from(arguments);
    args[0] = id;
    return args;
}
