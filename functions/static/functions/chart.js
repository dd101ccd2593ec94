/* A small bar chart of tasks finished per second, drawn on a <canvas> (no library, no CDN).
   FaasChart.draw(canvas, counts) takes per-second counts, oldest first, the last being now. */
(function () {
  "use strict";

  const PAD = { left: 44, right: 10, top: 10, bottom: 22 };

  function cssVar(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  /* The smallest 1, 2, 2.5 or 5 times a power of ten at or above value: round axis labels. */
  function niceMax(value) {
    if (value <= 4) return 4;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (m * power >= value) return m * power;
    }
    return 10 * power;
  }

  /* Match the backing store to the displayed size, so lines stay sharp on HiDPI screens. */
  function prepare(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx, width, height };
  }

  function drawAxes(ctx, box, top, seconds) {
    ctx.strokeStyle = cssVar("--hairline-color", "#e8e8e8");
    ctx.fillStyle = cssVar("--body-quiet-color", "#666");
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(box.top + box.height - (box.height * i) / 4) + 0.5;
      ctx.beginPath();
      ctx.moveTo(box.left, y);
      ctx.lineTo(box.left + box.width, y);
      ctx.stroke();
      ctx.fillText(String(Math.round((top * i) / 4 * 10) / 10), box.left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let ago = seconds; ago >= 0; ago -= 60) {
      const x = box.left + box.width * (1 - ago / seconds);
      ctx.fillText(ago === 0 ? "now" : `-${ago / 60} min`, Math.min(Math.max(x, box.left + 14), box.left + box.width - 12),
        box.top + box.height + 6);
    }
  }

  function drawBars(ctx, box, top, counts) {
    const step = box.width / counts.length;
    ctx.fillStyle = cssVar("--primary", "#79aec8");
    counts.forEach((n, i) => {
      if (n <= 0) return;
      const h = Math.max(1, (box.height * n) / top);
      ctx.fillRect(box.left + i * step, box.top + box.height - h, Math.max(1, step - (step > 3 ? 1 : 0)), h);
    });
  }

  function draw(canvas, counts) {
    const { ctx, width, height } = prepare(canvas);
    const box = { left: PAD.left, top: PAD.top, width: width - PAD.left - PAD.right, height: height - PAD.top - PAD.bottom };
    if (box.width <= 0 || box.height <= 0) return;
    const top = niceMax(counts.reduce((a, b) => Math.max(a, b), 0));
    drawAxes(ctx, box, top, counts.length);
    drawBars(ctx, box, top, counts);
  }

  window.FaasChart = { draw };
})();
