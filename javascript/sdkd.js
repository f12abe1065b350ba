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
